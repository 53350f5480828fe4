"""Decode the AIP-193 details of a failed call."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """(code, ErrorInfo.reason, BadRequest field paths) of a failed call."""
    assert isinstance(err, grpc.Call)
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "costsim.analytics.v1"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    assert reason, "no ErrorInfo in the status"
    return err.code(), reason, fields
