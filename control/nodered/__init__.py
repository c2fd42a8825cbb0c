"""Node-RED operator flows and dashboard for edgeva (flows.json, built by build.py)."""
