from storage_initializer_oci.provider import OciProvider

__all__ = ["OciProvider"]
