"""The instruments: backend selection, the op contract, correctness, timing, sweeps, counters,
device peaks, roofline, static inspection and reports. Importing this package imports no
kernel, so the backend can still be chosen."""
