"""The scheduler: pure pool decisions (pool.py) and the loop that carries them out
(loop.py). ``Scheduler`` is the only way in: callers get copies and data values
(model.py: Opened, SessionView, Route, PoolStatus) or a domain error (errors.py),
never the Pool itself. What the loop needs from outside is in ports.py."""
