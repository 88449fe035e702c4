"""ONNX graphs on the CPU within a memory budget: weights kept in one scratch file
(``weights``), sessions sized for memory (``ort_cpu``), a graph run as consecutive segments
(``segments``), and a graph's outputs on many inputs, a few at a time (``ort_eval``).

Below calibration and the export drivers, which both use it; imports only the base."""
