"""Canary artifacts in an S3-compatible object store, written then verified, with checksums.

Layout: ``s3://<bucket>/<prefix>/<run_id>/{comparisons.jsonl, diffs.jsonl, report.json}``, the
same folders as the local store's, so reports name the same relative paths
(``<run_id>/<name>``) on both backends.

Publication: one ``PutObject`` per artifact. A single PUT is atomic (readers see the whole
object or none), and it carries ``Content-MD5`` and ``x-amz-checksum-sha256``, which servers that
check them use to refuse a body damaged on the way. The write is then verified: a ``HeadObject``
must show the length, and the server's SHA-256 (or, without one, an MD5 ETag) of the bytes
written; when the server offers neither, the object is read back and hashed. An object that fails
the check is deleted and the save fails, so no damaged object stays under its final key.
``report.json`` is written last and names the others' checksums: a run prefix without it is
incomplete, and ``runs`` ignores it.

Errors (``ports.ArtifactStore``): a store that does not answer (connection refused or reset,
timeouts, throttling or 5xx after the client's retries) raises
:class:`~costsim_analytics.engines.errors.ArtifactStoreUnavailable`; a missing object raises
``FileNotFoundError``; a refusal that retrying cannot cure (no such bucket, access denied, bad
credentials) raises :class:`ArtifactStoreRefused`, an ``OSError``. Messages name the bucket
and the failure, never the endpoint or the credentials.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from costsim_analytics.drivers.artifacts.keys import check_run_id, relative_path
from costsim_analytics.engines.canary.evaluation import REPORT_FILE
from costsim_analytics.engines.errors import ArtifactStoreUnavailable
from costsim_analytics.engines.reports import ArtifactRef

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

# DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
# Error codes that say "later", whatever the HTTP status.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class ArtifactStoreRefused(OSError):
    """The object store answered with a refusal retrying cannot cure (bucket, access, keys)."""


class ArtifactVerifyError(OSError):
    """An object read back after its write does not hold the bytes written."""


def _s3_error(exc: Exception, doing: str, bucket: str) -> Exception:
    """The project's error for a botocore failure while ``doing`` something in ``bucket``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING_CODES:
            return FileNotFoundError(errno.ENOENT, f"no such artifact ({doing})")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return ArtifactStoreUnavailable(
                f"the artifact store did not answer ({doing}: {code or status})"
            )
        return ArtifactStoreRefused(
            errno.EACCES, f"the artifact store refused {doing} in bucket {bucket!r}: {code}"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        # Refused, reset, timed out: botocore retried already (see bootstrap.artifact_store).
        return ArtifactStoreUnavailable(
            f"the artifact store could not be reached ({doing}: {type(exc).__name__})"
        )
    # Credentials missing or incomplete, a bad endpoint URL: configuration, not "later".
    return ArtifactStoreRefused(
        errno.EACCES, f"the artifact store client failed ({doing}: {type(exc).__name__})"
    )


class S3ArtifactStore:
    """Artifacts under ``prefix`` in one bucket of an S3-compatible store.

    Example (with a client made by ``bootstrap.artifact_store``)::

        store = S3ArtifactStore(client, "costsim-artifacts", "prod/canary")
        refs = store.save(run_id, {"comparisons.jsonl": data})
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Keys per ListObjectsV2 page (S3 returns at most 1,000 whatever is asked).
        self.page_size = page_size

    @property
    def location(self) -> str:
        """Where the artifacts are, for logs: ``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _run_prefix(self, run_id: str) -> str:
        """``<prefix>/<run_id>/`` (or ``<run_id>/`` without a prefix)."""
        check_run_id(run_id)
        return f"{self.prefix}/{run_id}/" if self.prefix else f"{run_id}/"

    def key(self, run_id: str, name: str) -> str:
        """The object key of one artifact."""
        if not name or "/" in name:
            raise ValueError(f"not an artifact name: {name!r}")
        return self._run_prefix(run_id) + name

    def _call(self, doing: str, method: Any, **kwargs: Any) -> Any:
        """One client call, its failures translated (see the module docstring)."""
        try:
            return method(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            translated = _s3_error(exc, doing, self.bucket)
            log.warning("artifact store: %s in %s failed: %r", doing, self.location, exc)
            raise translated from exc

    def save(self, run_id: str, files: Mapping[str, bytes]) -> tuple[ArtifactRef, ...]:
        """PUT each object in the given order, verify it, and return the references.

        Raises:
            ArtifactStoreUnavailable: the store did not answer; objects already verified stay.
            OSError: the store refused a write, or an object did not verify (it was deleted).
        """
        refs = []
        for name, data in files.items():
            key = self.key(run_id, name)
            sha = hashlib.sha256(data)
            md5 = hashlib.md5(data, usedforsecurity=False)
            self._call(
                f"writing {relative_path(run_id, name)}",
                self.client.put_object,
                Key=key,
                Body=data,
                ContentLength=len(data),
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                ChecksumSHA256=base64.b64encode(sha.digest()).decode(),
                Metadata={"sha256": sha.hexdigest()},
            )
            self._verify_written(run_id, name, data, sha.digest(), md5.hexdigest())
            refs.append(ArtifactRef(relative_path(run_id, name), sha.hexdigest(), len(data)))
        return tuple(refs)

    def _verify_written(
        self, run_id: str, name: str, data: bytes, sha: bytes, md5_hex: str
    ) -> None:
        """Check the object now under the key holds ``data``; delete it when it does not."""
        key = self.key(run_id, name)
        path = relative_path(run_id, name)
        head = self._call(
            f"checking {path}", self.client.head_object, Key=key, ChecksumMode="ENABLED"
        )
        server_sha = head.get("ChecksumSHA256")
        etag = str(head.get("ETag", "")).strip('"')
        if head.get("ContentLength") != len(data):
            ok = False
        elif server_sha:
            ok = base64.b64decode(server_sha) == sha
        elif etag == md5_hex:
            ok = True
        else:
            # No SHA-256 from the server and an ETag that is not the MD5 (encrypted buckets,
            # some servers): read the object back.
            ok = hashlib.sha256(self.read(run_id, name)).digest() == sha
        if not ok:
            self._call(f"deleting {path}", self.client.delete_object, Key=key)
            raise ArtifactVerifyError(
                errno.EIO, f"{path} did not verify after its write; it was deleted"
            )

    def runs(self) -> Iterator[str]:
        """Run ids whose report artifact is complete, in key (= name) order.

        Lists every key under the prefix, a page (at most 1,000 keys) at a time.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=base, PaginationConfig={"PageSize": self.page_size}
            ):
                for item in page.get("Contents", []):
                    rest = item["Key"][len(base) :]
                    run_id, _, name = rest.partition("/")
                    if name == REPORT_FILE and run_id and not run_id.startswith("."):
                        yield run_id
        except (BotoCoreError, ClientError) as exc:
            log.warning("artifact store: listing %s failed: %r", self.location, exc)
            raise _s3_error(exc, "listing runs", self.bucket) from exc

    def read(self, run_id: str, name: str) -> bytes:
        """The bytes of one artifact (``FileNotFoundError`` when there is none)."""
        path = relative_path(run_id, name)
        response = self._call(f"reading {path}", self.client.get_object, Key=self.key(run_id, name))
        try:
            body: bytes = response["Body"].read()
        except (BotoCoreError, OSError) as exc:  # the connection broke mid-body
            raise _s3_error(exc, f"reading {path}", self.bucket) from exc
        return body

    def remove(self, run_id: str) -> bool:
        """Delete every object of a run (a page of keys at a time); False when there was none."""
        base = self._run_prefix(run_id)
        paginator = self.client.get_paginator("list_objects_v2")
        removed = False
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=base, PaginationConfig={"PageSize": self.page_size}
            ):
                keys: list[ObjectIdentifierTypeDef] = [
                    {"Key": item["Key"]} for item in page.get("Contents", [])
                ]
                for start in range(0, len(keys), DELETE_BATCH):
                    batch = keys[start : start + DELETE_BATCH]
                    answer = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                    if errors := answer.get("Errors"):
                        raise ArtifactStoreRefused(
                            errno.EACCES,
                            f"the artifact store kept {len(errors)} object(s) of {run_id}: "
                            f"{errors[0].get('Code', '')}",
                        )
                    removed = True
        except (BotoCoreError, ClientError) as exc:
            log.warning("artifact store: removing %s in %s failed: %r", run_id, self.location, exc)
            raise _s3_error(exc, f"removing {run_id}", self.bucket) from exc
        return removed

    def ref(self, run_id: str, name: str) -> ArtifactRef:
        """The reference (path, checksum, size) of an existing artifact, from its bytes."""
        data = self.read(run_id, name)
        return ArtifactRef(relative_path(run_id, name), hashlib.sha256(data).hexdigest(), len(data))

    def verify(self, ref: ArtifactRef) -> bool:
        """True when the object exists with the recorded size and checksum.

        Only relative references resolve here; absolute ones (old local reports) do not.
        """
        path = PurePosixPath(ref.path)
        if path.is_absolute() or len(path.parts) != 2:
            return False
        run_id, name = path.parts
        try:
            data = self.read(run_id, name)
        except (OSError, ValueError):
            return False
        return len(data) == ref.size_bytes and hashlib.sha256(data).hexdigest() == ref.sha256
