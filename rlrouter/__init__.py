"""rlrouter: the cluster simulator, the Gymnasium environment, baseline routers, and the
exported routing policy with its torch-free forward pass."""

ENV_ID = "rlrouter/LLMRouting-v0"

# Serving (the gateway's `dqn` and `slackfit` routers, the slim docker images) installs neither
# gymnasium nor the training stack: the environment is registered only where gymnasium is.
try:
    from gymnasium.envs.registration import register, registry
except ImportError:
    pass
else:
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="rlrouter.env:LLMRoutingEnv")

__all__ = ["ENV_ID"]
