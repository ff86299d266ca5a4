"""Bases for the scripted in-process nodes of the client tests: every RPC a test does not
script answers UNIMPLEMENTED, once, here (the generated servicers' methods are abstract to
the type checker), and the cluster service knows no leader unless a test says otherwise."""

from __future__ import annotations

from typing import NoReturn

import grpc

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc, lock_pb2, lock_pb2_grpc


def _unscripted(context: grpc.ServicerContext) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
    raise AssertionError("abort returned")


class UnscriptedCluster(cluster_pb2_grpc.ClusterServiceServicer):
    def Leader(self, request: cluster_pb2.LeaderRequest, context: grpc.ServicerContext) -> cluster_pb2.LeaderResponse:
        context.abort(grpc.StatusCode.UNAVAILABLE, "knows no leader")
        raise AssertionError("abort returned")

    def Status(self, request: cluster_pb2.StatusRequest, context: grpc.ServicerContext) -> cluster_pb2.StatusResponse:
        _unscripted(context)

    def Members(
        self, request: cluster_pb2.MembersRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.MembersResponse:
        _unscripted(context)


class UnscriptedCache(cache_pb2_grpc.CacheServiceServicer):
    def Put(self, request: cache_pb2.PutRequest, context: grpc.ServicerContext) -> cache_pb2.PutResponse:
        _unscripted(context)

    def Get(self, request: cache_pb2.GetRequest, context: grpc.ServicerContext) -> cache_pb2.GetResponse:
        _unscripted(context)

    def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        _unscripted(context)

    def CompareAndSet(
        self, request: cache_pb2.CompareAndSetRequest, context: grpc.ServicerContext
    ) -> cache_pb2.CompareAndSetResponse:
        _unscripted(context)


class UnscriptedLock(lock_pb2_grpc.LockServiceServicer):
    def Acquire(self, request: lock_pb2.AcquireRequest, context: grpc.ServicerContext) -> lock_pb2.AcquireResponse:
        _unscripted(context)

    def Release(self, request: lock_pb2.ReleaseRequest, context: grpc.ServicerContext) -> lock_pb2.ReleaseResponse:
        _unscripted(context)

    def Refresh(self, request: lock_pb2.RefreshRequest, context: grpc.ServicerContext) -> lock_pb2.RefreshResponse:
        _unscripted(context)

    def Validate(self, request: lock_pb2.ValidateRequest, context: grpc.ServicerContext) -> lock_pb2.ValidateResponse:
        _unscripted(context)

    def GetLock(self, request: lock_pb2.GetLockRequest, context: grpc.ServicerContext) -> lock_pb2.GetLockResponse:
        _unscripted(context)

    def ListLocks(
        self, request: lock_pb2.ListLocksRequest, context: grpc.ServicerContext
    ) -> lock_pb2.ListLocksResponse:
        _unscripted(context)
