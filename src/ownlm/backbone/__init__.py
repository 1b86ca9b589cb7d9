"""The frozen language model every user's adapter sits on: the `Backbone` protocol and
its two kinds (a causal LM, the MiniLM encoder), loading, device and precision, the
tiny Llama ownlm trains itself, the prompt format and the context length."""
