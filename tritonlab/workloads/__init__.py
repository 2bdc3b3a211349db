"""Whole-model workloads built from the lab's kernels: the same feed-forward block trained
(:mod:`.train`) and served (:mod:`.infer`), for the training-vs-inference contrast."""
