"""TensorDict key names shared by every component.

A leaf module: it imports nothing of ours, so envs, policies, actors, learners and the platform can all
depend on it. Step results sit under ``("next", ...)`` as in TorchRL. Shapes use B = batch (simulators
or samples), T = time, V = cameras, H/W = image size, S = state dim, A = action dim, K = chunk length,
L = instruction tokens.
"""

# -- raw observations, as environments emit them and datasets store them ---------------------------
OBS = "observation"
IMAGE = (OBS, "image")  # uint8 (B, V, H, W, 3), channel-last as rendered
STATE = (OBS, "state")  # float32 (B, S): the recipe-chosen state vector (proprio, + object/goal)
PRIVILEGED = (OBS, "privileged")  # float32 (B, P): full simulator observation (scripted experts, critics)
INSTRUCTION = (OBS, "instruction")  # NonTensorStack of str, batch (B,): the language instruction
TASK_INDEX = (OBS, "task_index")  # int64 (B,): index into the env's task list

# -- step results (under "next") and flags -----------------------------------------------------------
NEXT = "next"
REWARD = "reward"  # float32 (B, 1) -- trailing singleton as in TorchRL
DONE = "done"  # bool (B, 1): terminated | truncated
TERMINATED = "terminated"  # bool (B, 1): the MDP ended (success with terminate_on_success)
TRUNCATED = "truncated"  # bool (B, 1): time limit
SUCCESS = "success"  # bool (B, 1): the task's success predicate at this step

# -- actions and policy outputs ----------------------------------------------------------------------
ACTION = "action"  # float32 (B, A) one env step; (B, K, A) for a chunk
ACTION_CHUNK = "action_chunk"  # float32 (B, K, A): the chunk the policy predicted
ACTION_PAD = "action_is_pad"  # bool (B, K): chunk positions past the episode end (datasets)
LOG_PROB = "action_log_prob"  # float32 (B,): TorchRL's default key for ClipPPOLoss
VALUE = "state_value"  # float32 (B, 1): TorchRL's default value key
POLICY_VERSION = "policy_version"  # int64 (B,): weights version that produced the step
REPLANNED = "replanned"  # bool (B,): the policy planned a new chunk at this step (PolicyRunner)
CHUNK_STEP = "chunk_step"  # int64 (B,): index of this step's action inside its chunk (PolicyRunner)
EXEC_STEPS = "exec_steps"  # int64 (B,): env steps one policy decision (a chunk) covered (rollouts)

# -- prepared model inputs (processor output, model input) -------------------------------------------
PIXELS = "pixels"  # float32 (B, V, 3, H, W) in [0, 1]
STATE_NORM = "state_norm"  # float32 (B, S), normalised with dataset statistics
TOKENS = "lang_tokens"  # int64 (B, L)
TOKENS_MASK = "lang_mask"  # bool (B, L): True where a real token sits
TARGET_CHUNK = "target_chunk"  # float32 (B, K, A): normalised target actions (BC)
VLM_INPUTS = "vlm_inputs"  # TensorDict (B,) replacing PIXELS/TOKENS for backbone.type hf: the HF processor's
#                            output (input_ids, attention_mask, pixel_values, ...), passed to the VLM as kwargs

# -- model outputs -----------------------------------------------------------------------------------
ACTION_MEAN = "action_mean"  # float32 (B, K, A), normalised action space
ACTION_LOG_STD = "action_log_std"  # float32 (B, K, A)
HEAD_FEATURES = "head_features"  # float32 (B, K, dim): the backbone readout a generative head conditions on

# -- what an action head needs to recompute a sampled chunk's log-prob (vlaforge/policies/heads/) ---------
HEAD_EXTRAS = "head_extras"  # TensorDict (B,): per-head extras, stored by the rollout actor with the chunk
ACTION_TOKENS = "action_tokens"  # int64 (B, N) under HEAD_EXTRAS: the token head's sampled token sequence
DENOISE_CHAIN = "denoise_chain"  # float32 (B, S+1, K, A) under HEAD_EXTRAS: x_T .. x_0 of a diffusion/flow chain

# -- reward model (vlaforge/policies/reward_model.py) ------------------------------------------------
RM_LOGIT = "rm_logit"  # float32 (B,): success logit (kind "success") or per-frame score (kind "preference")
RM_TARGET = "rm_target"  # float32 (B,): label in [0, 1]; 1 = the frame shows success, soft = progress
RM_REWARD = "rm_reward"  # float32 (B, 1) under "next": the reward model's reward for that decision
ENV_REWARD = "env_reward"  # float32 (B, 1) under "next": the simulator's reward, kept when the RM replaces it
RM_LEVEL = "rm_level"  # float32 (B, 1) under "next": p(success | next observation), the RM's level
RM_SHAPING = "rm_shaping"  # float32 (B, 1) under "next": gamma^k Phi(s') - Phi(s), Phi = the RM's level

# -- latent actions (vlaforge/policies/latent_action/, heads/latent.py) -------------------------------------
NEXT_IMAGE = (NEXT, OBS, "image")  # uint8 (B, V, H, W, 3): o_{t+k} of a frame pair (data/frame_pairs.py)
LAM_FRAMES = "lam_frames"  # float32 (B, 3V, S, S) in [0, 1]: o_t as the latent action model sees it
LAM_NEXT_FRAMES = "lam_next_frames"  # float32 (B, 3V, S, S): o_{t+k}, the forward model's target
LAM_PRED = "lam_pred"  # float32 (B, 3V, S, S): the forward model's prediction of o_{t+k}
LAM_AUX_LOSS = "lam_aux_loss"  # float32 (B,), one value repeated: the quantizer's loss (vq_ema commitment, else 0)
LATENT_CODES = "latent_codes"  # int64 (B, N): the latent action of a transition, N codes in [0, C)
LATENT_LOGITS = "latent_logits"  # float32 (B, N, C): the latent head's prediction of LATENT_CODES
LAM_ACTIONS = "lam_actions"  # float32 (B, A): mean of the min-max normalised actions t .. t+k-1 (LAOM pairs only)
LAM_HAS_ACTIONS = "lam_has_actions"  # bool (B,): the pair is labelled (LAM_ACTIONS holds its actions)
LAM_ACTION_PRED = "lam_action_pred"  # float32 (B, A): the LAM's action decoder on the codes (LAOM)

# -- episode bookkeeping -------------------------------------------------------------------------------
EPISODE_INDEX = "episode_index"  # int64
FRAME_INDEX = "frame_index"  # int64
EPISODE_RETURN = "episode_return"
EPISODE_LENGTH = "episode_length"

# -- RL learners (advantage estimation and losses; batch [B, T] or flat [N]) -----------------------------
ADVANTAGE = "advantage"  # float32 (..., 1): TorchRL's default advantage key
VALUE_TARGET = "value_target"  # float32 (..., 1): regression target of the value head (TorchRL's default)
OLD_VALUE = "old_state_value"  # float32 (..., 1): VALUE at sampling time, kept beside the model's new VALUE
REF_ACTION_MEAN = "ref_action_mean"  # float32 (..., K, A): the frozen reference policy's mean
REF_ACTION_LOG_STD = "ref_action_log_std"  # float32 (..., K, A)
REF_LOG_PROB = "ref_log_prob"  # float32 (...,): the frozen reference's log-prob of the stored chunk (k3 KL)
GROUP_ID = "group_id"  # int64 (B, T), constant along T: rows started from the same initial state share it (GRPO/RLOO)

# -- self-supervised frame pairs (issue 7: the visual_ssl objective, learners/visual_ssl.py) -------------
PIXELS_PAIR = "pixels_pair"  # float32 (B, V, 3, H, W) in [0, 1]: NEXT_IMAGE (o_t+gap) prepared like PIXELS
EMBEDDING = "embedding"  # float32 (B, D): L2-normalised projection of IMAGE's vision tokens
EMBEDDING_PAIR = "embedding_pair"  # float32 (B, D): the same of IMAGE_PAIR
