# Importing lossbench.conf (as Hydra does to read these files) registers the typed schemas that
# conf/config.yaml names first in its defaults list.
from lossbench.config.schema import register_schemas

register_schemas()
