"""Standard Webhooks on the wire: signing and sending fhirai's events (sender.py) and the signed
/hooks/<source> ingress (inbound.py)."""
