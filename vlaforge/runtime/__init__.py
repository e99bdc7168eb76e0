"""The runtime layer: what every process imports (DESIGN.md "Who imports whom").

Process environment and threads (`process`), worker groups and placement (`worker_group`), the weight
broadcast (`weights`), atomic checkpoints (`checkpoint`) and bounded remote waits (`timeouts`). It sits
below learners, actors and data and imports nothing of ours but `keys`, `errors` and `config_base`.
"""
