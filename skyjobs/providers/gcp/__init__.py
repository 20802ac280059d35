"""Google Cloud: Compute Engine VMs (``compute``), gs:// buckets (``storage``), list prices
from the Cloud Billing Catalog (``billing``). Nothing here imports a Google library at
module level: those imports take seconds and only a controller that enables gcp pays them.
"""
