"""Tooling around the library, not part of it: the command line (``cli``), the benchmark
(``bench``), the zoo runner behind ``declarative verify`` (``zoo_runner``), Jacobian plots
(``plot``), and the one place for tables, number formatting and JSON (``format``)."""
