"""The methods as libraries: how a user's model is built, stored, loaded and exported.

`oppu`   one PEFT LoRA per user on the population-merged base (Tan et al. 2024).
`proper` group LoRA experts with user-aware routers, plus a residual LoRA and router per
         user (Zhang et al. 2025).

Flows (train, evaluate, studies, serve, the CLI) call these; nothing here trains a model
or scores one.
"""
