from ownlm.store.store import AdapterStore, Manifest

__all__ = ["AdapterStore", "Manifest"]
