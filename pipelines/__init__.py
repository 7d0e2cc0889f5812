"""AI Factory: the logic of the production line.

DAG files in ``dags/`` only wire tasks; every task calls one function of this
package. Modules import their heavy dependencies (Spark, Great Expectations,
TensorFlow) inside the functions that need them, so the package imports cheaply
in both the orchestration and the ML environment.
"""

__version__ = "0.1.0"
