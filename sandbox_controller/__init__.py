"""agent-sandbox-controller: a warm pool of sandbox pods leased to AI-agent sessions."""

__version__ = "0.1.0"
