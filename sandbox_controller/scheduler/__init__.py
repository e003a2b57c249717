"""The scheduler: pure pool decisions (pool.py) and the loop that carries them out."""
