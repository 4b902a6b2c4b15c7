"""rlrouter: the cluster simulator, the Gymnasium environment, baseline routers, and the
exported routing policy with its torch-free forward pass."""

from gymnasium.envs.registration import register, registry

ENV_ID = "rlrouter/LLMRouting-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="rlrouter.env:LLMRoutingEnv")

__all__ = ["ENV_ID"]
