"""Package layout (everything else is in pyproject.toml).

The shipped YAML configs live at the top of the source tree (``configs/``) so that commands read
naturally from a checkout (``--config configs/dit/tta.yaml``); they are also installed as the package
data of ``lodit.configs``, so ``lodit demo`` and the shipped configs work from a wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lodit", "lodit.*"]), "lodit.configs"],
    package_dir={"lodit.configs": "configs"},
    package_data={"lodit.configs": ["**/*.yaml"]},
)
