from ownlm.store.store import AdapterStore, Manifest
from ownlm.store.tokens import Principal, TokenStore

__all__ = ["AdapterStore", "Manifest", "Principal", "TokenStore"]
