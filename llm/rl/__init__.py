"""What online RL algorithms (GRPO, PPO) share: rollouts on the policy's own arrays, reward
functions, KL to the reference, group advantages, the clipped surrogate, rollout logs."""
