"""What-if simulation: traces of editor traffic (trace.py, export.py), replayed through
the real scheduler on a simulated clock (simulate.py), reported (report.py), and the
commands around them (cli.py: trace, simulate; planning.py: plan --trace). The
controller never imports this package."""
