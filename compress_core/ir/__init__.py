"""What a network is: the graph (``graph``), the model zoo (``zoo``), MAC and parameter
counts (``flops``), layouts (``layout``), seeded initialisation (``init``) and checkpoints
(``checkpoint``)."""
