"""EC2 and S3 errors mapped onto the skyjobs exception classes, by error code only.

The runner acts on the class: CapacityError moves to the next candidate, FatalProviderError
fails the launch at once, any other ProviderError is retried later. Error messages are
free text that AWS may reword; the codes are a documented contract.
"""

from __future__ import annotations

from skyjobs.exceptions import CapacityError, FatalProviderError, ProviderError

# No room for this placement right now; another zone, region or type may have some.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "Unsupported",  # the instance type is not offered in this zone
})

# Credentials, permissions, quotas and configuration: retrying the same call cannot help.
FATAL_CODES = frozenset({
    "AuthFailure",
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "OptInRequired",
    "PendingVerification",
    "Blocked",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidParameter",
    "MissingParameter",
    "InvalidInstanceType",
    "InvalidUserData.Malformed",
    "InvalidBlockDeviceMapping",
})

# Families of codes (``InvalidAMIID.NotFound``, ``InvalidSubnetID.Malformed``...): the part
# before the dot names the misconfigured setting.
FATAL_PREFIXES = (
    "InvalidAMIID.",
    "InvalidSubnetID.",
    "InvalidSubnet.",
    "InvalidGroup.",
    "InvalidGroupId.",
    "InvalidSecurityGroupID.",
    "InvalidKeyPair.",
    "InvalidIamInstanceProfile.",
    "InvalidVpcID.",
)

HINTS = {
    "AuthFailure": "check the AWS credentials of the controller",
    "UnauthorizedOperation": "the controller's IAM identity lacks an EC2 permission",
    "VcpuLimitExceeded": "raise the vCPU quota for this instance family and region",
    "InstanceLimitExceeded": "raise the instance quota of this region",
    "OptInRequired": "the account is not subscribed to this service or region",
    "InvalidAMIID.": "SKYJOBS_AWS_IMAGE_ID does not name an image of this region",
    "InvalidSubnetID.": "SKYJOBS_AWS_SUBNETS names a subnet this region does not have",
    "InvalidGroup.": "SKYJOBS_AWS_SECURITY_GROUP_IDS names a group this VPC does not have",
    "InvalidGroupId.": "SKYJOBS_AWS_SECURITY_GROUP_IDS is malformed",
    "InvalidKeyPair.": "SKYJOBS_AWS_KEY_NAME does not exist in this region",
    "InvalidIamInstanceProfile.": "SKYJOBS_AWS_INSTANCE_PROFILE does not exist",
}


def is_fatal(code: str) -> bool:
    return code in FATAL_CODES or code.startswith(FATAL_PREFIXES)


def hint(code: str) -> str:
    for key, text in HINTS.items():
        if code == key or (key.endswith(".") and code.startswith(key)):
            return f" ({text})"
    return ""


def classify(code: str, message: str, what: str) -> ProviderError:
    """The skyjobs error for an AWS error code; ``message`` is only carried along."""
    text = f"{what}: {code}: {message}{hint(code)}"
    cls = ProviderError  # throttling (RequestLimitExceeded), 5xx, and any code new to us
    if code in CAPACITY_CODES:
        cls = CapacityError
    elif is_fatal(code):
        cls = FatalProviderError
    err = cls(text)
    err.aws_code = code  # type: ignore[attr-defined]  # for callers that expect one code
    return err


def from_client_error(err: Exception, what: str) -> ProviderError:
    """Map a botocore ClientError (or lookalike with ``.response``)."""
    response = getattr(err, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code") or "Unknown")
    return classify(code, str(error.get("Message") or ""), what)
