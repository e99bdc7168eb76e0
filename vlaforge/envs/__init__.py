"""Batched simulator envs: the contract (base), one adapter per simulator, instruction templates."""
