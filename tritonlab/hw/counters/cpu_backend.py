"""CPU counters: process and system CPU utilisation, CPU frequency and RSS (psutil), package
power and energy from RAPL (the Linux powercap interface) where it is readable, and the CPU
temperature where psutil sees a sensor."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

from tritonlab.hw.counters.metrics import CPU_METRICS, MIB, POWERCAP_ROOT


class RaplReader:
    """CPU package energy from the Linux powercap interface (``intel-rapl:N`` zones named
    ``package-N``; AMD hosts expose the same), summed over packages and corrected for the
    counter wrapping at ``max_energy_range_uj``. ``reason`` says why no zone is usable."""

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        self.zones: list[tuple[Path, int]] = []
        self.reason: str | None = None
        self._lock = threading.Lock()
        root = Path(root)
        if not root.is_dir():
            self.reason = f"no {root} (RAPL is not exposed on this host or container)"
            return
        unreadable = []
        for zone in sorted(root.iterdir()):
            name_file = zone / "name"
            try:
                if not name_file.read_text().strip().startswith("package"):
                    continue
                int((zone / "energy_uj").read_text())
                span = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                unreadable.append(zone.name)
                continue
            except (OSError, ValueError):
                continue
            self.zones.append((zone / "energy_uj", span))
        if not self.zones:
            self.reason = (f"RAPL package energy under {root} is not readable by this user "
                           f"({', '.join(unreadable)}; root only since Linux 5.10)"
                           if unreadable else f"no RAPL package zone under {root}")
        self._last = [None] * len(self.zones)
        self._total_uj = 0

    def read_j(self) -> float:
        """Energy in J since the first read (monotone across counter wraps)."""
        with self._lock:
            for i, (path, span) in enumerate(self.zones):
                raw = int(path.read_text())
                last = self._last[i]
                if last is not None:
                    self._total_uj += raw - last if raw >= last else raw + span - last
                self._last[i] = raw
            return self._total_uj / 1e6


_TEMP_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "acpitz")


class CpuBackend:
    """CPU counters: psutil for utilisation, frequency and RSS; RAPL for power and energy."""

    kind = "cpu"
    # RAPL counters update about every millisecond: no quantisation worth reporting.
    energy_update_s = 0.001

    def __init__(self, *, powercap_root: str | Path = POWERCAP_ROOT, pid: int | None = None):
        self.psutil = psutil
        self.proc = psutil.Process(pid)
        self.metrics = CPU_METRICS
        self.unavailable: dict[str, str] = {}
        self.errors: dict[str, int] = {}
        # cpu_percent(None) measures since its previous call: prime both counters now.
        self.proc.cpu_percent(None)
        psutil.cpu_percent(None)
        if self._cpu_freq() is None:
            self.unavailable["cpu_freq_mhz"] = "psutil.cpu_freq() reports nothing on this host"
        self._sensor = self._find_sensor()
        if self._sensor is None:
            self.unavailable["temp_c"] = "psutil sees no CPU temperature sensor on this host"
        self.rapl = RaplReader(powercap_root)
        if self.rapl.reason:
            self.unavailable["power_w"] = self.unavailable["energy_j"] = self.rapl.reason
            self._energy0 = None
        else:
            self._energy0 = self.rapl.read_j()
        self._last_energy: tuple[float, float] | None = None

    def _cpu_freq(self) -> float | None:
        try:
            freq = self.psutil.cpu_freq()
        except (OSError, RuntimeError, NotImplementedError):  # no cpufreq on this platform
            return None
        return float(freq.current) if freq else None

    def _find_sensor(self) -> str | None:
        read = getattr(self.psutil, "sensors_temperatures", None)
        temps = read() if read else {}
        for name in _TEMP_SENSORS:
            if temps.get(name):
                return name
        return None

    def energy_counter_j(self) -> float | None:
        return None if self._energy0 is None else self.rapl.read_j()

    def read(self) -> dict[str, float | None]:
        ps = self.psutil
        row: dict[str, float | None] = {
            "proc_cpu_pct": self.proc.cpu_percent(None),
            "sys_cpu_pct": ps.cpu_percent(None),
            "cpu_freq_mhz": None,
            "rss_mib": self.proc.memory_info().rss / MIB,
            "power_w": None,
            "energy_j": None,
            "temp_c": None,
        }
        if "cpu_freq_mhz" not in self.unavailable:
            row["cpu_freq_mhz"] = self._cpu_freq()
        if self._sensor is not None:
            readings = ps.sensors_temperatures().get(self._sensor) or []
            row["temp_c"] = max(r.current for r in readings) if readings else None
        if self._energy0 is not None:
            now, energy = time.perf_counter(), self.rapl.read_j()
            row["energy_j"] = energy - self._energy0
            if self._last_energy is not None:
                t_last, e_last = self._last_energy
                row["power_w"] = (energy - e_last) / (now - t_last) if now > t_last else None
            self._last_energy = (now, energy)
        return row

    def gpm_poll(self, now: float) -> None:
        return None

    def info(self) -> dict:
        return {"counters": "cpu", "logical_cpus": self.psutil.cpu_count(),
                "rapl_zones": [str(p.parent.name) for p, _ in self.rapl.zones],
                "temperature_sensor": self._sensor}

    def close(self) -> None:
        pass

