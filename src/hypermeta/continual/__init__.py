"""Continual learning: tasks arrive one after another; a hypernetwork remembers them all.

``hypermeta.continual.data`` (Fashion-MNIST, MNIST-5k and Omniglot-alphabet task sequences),
``hypermeta.continual.methods`` (``HyperCL``: a task-embedding-conditioned chunked hypernetwork
with von Oswald et al.'s output regulariser; baselines fine-tuning, EWC, SI, separate networks,
joint training) and ``hypermeta.continual.run`` (config, training loop, accuracy matrix,
backward transfer, task inference by entropy, checkpoints, plot).

Example:
    >>> from hypermeta.continual import HyperCL, make_scenario, learn_task
    >>> scenario = make_scenario("split_fmnist")
    >>> learner = HyperCL(MLP(784, 2, (256, 256)), num_tasks=len(scenario))
"""

from hypermeta.continual.data import (
    SCENARIOS,
    ContinualTask,
    ImageSet,
    Scenario,
    check_scenario,
    load_fashion_mnist,
    load_mnist5k,
    make_scenario,
    omniglot_alphabets,
    permuted,
    scenario_from_arrays,
    split,
)
from hypermeta.continual.methods import (
    EWC,
    SI,
    ContinualLearner,
    Finetune,
    HyperCL,
    MultiHead,
    Separate,
)
from hypermeta.continual.run import (
    ContinualConfig,
    ContinualResult,
    accuracy,
    infer_tasks,
    is_continual_config,
    learn_task,
    load_continual,
    plot_matrix,
    summarize,
    task_inference,
    train_continual,
)

__all__ = ["EWC", "SCENARIOS", "SI", "ContinualConfig", "ContinualLearner", "ContinualResult",
           "ContinualTask", "Finetune", "HyperCL", "ImageSet", "MultiHead", "Scenario",
           "Separate", "accuracy", "check_scenario", "infer_tasks", "is_continual_config",
           "learn_task", "load_continual", "load_fashion_mnist", "load_mnist5k",
           "make_scenario", "omniglot_alphabets", "permuted", "plot_matrix",
           "scenario_from_arrays", "split", "summarize", "task_inference", "train_continual"]
