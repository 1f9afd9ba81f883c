"""Library code shared by the privmed client and server: models, data, losses, metrics, privacy math."""
