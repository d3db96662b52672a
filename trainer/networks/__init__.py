"""Adapter networks (kohya LierLa / C3Lier on peft, LyCORIS) and kohya's file format.

Nothing is imported here, so that reading a network config (``trainer.settings.network``) does
not load torch; import the modules themselves (``trainer.networks.factory``).
"""
