"""ownlm: one small PEFT module per user (OPPU), group experts (PROPER), serving and export."""

__version__ = "0.1.0"
