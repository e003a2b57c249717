"""The scheduler: pure pool decisions (pool.py, which dispatches to its policies:
admission.py, claiming.py, idling.py, prewarm.py, lifecycle.py) and the loop that
carries them out (rounds.py, effect_calls.py). ``Scheduler`` (loop.py) is the only
way in: callers get copies and data values (model.py: Opened, SessionView, Route,
PoolStatus) or a domain error (errors.py), never the Pool itself. What the loop needs
from outside is in ports.py."""
