"""Node perturbation with direct feedback (the paper's CIFAR-10 network)."""

from __future__ import annotations

from trainables.rules.node_perturbation import NodePerturbation


class NodePerturbationDirect(NodePerturbation):
    """Direct B[i] from the output error e[L-1] to each hidden layer, learned by
    regressing λ̂[i] on e[L-1] (Corollary 1: B → the product of the weights above)."""

    name = "node_perturbation_direct"
    description = "feedback learned by node perturbation, direct from the output error"
    direct = True
