"""The network (Embedding -> RNN -> Linear) and its fused CPU time loops."""

from .network import CharRNNModel, State, detach_state, state_from_tensors, state_tensors

__all__ = ["CharRNNModel", "State", "detach_state", "state_from_tensors", "state_tensors"]
