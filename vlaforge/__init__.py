"""vlaforge: train vision-language-action robot policies with Ray rollouts and DeepSpeed learners."""

__version__ = "0.1.0"
