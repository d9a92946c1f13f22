"""Experiments: workloads (arrivals, traces), runs, reports, plots and paper figures."""
