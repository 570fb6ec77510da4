import Logging
import ServeCore
import ServeProto
import ServeWire

/// The head's side of the control plane: one bidirectional RPC per worker
/// (`/serve.v1.Control/Connect`). The worker registers first; then heartbeats and replica state
/// reports flow up, and the controller's commands flow down on the same stream.
enum ClusterService {
    static func router(controller: Controller, token: String, logger: Logger) -> RPCRouter {
        var router = RPCRouter()
        router.bidirectional(ControlPaths.connect) {
            (inbound: RPCInbound<PBWorkerMessage>, outbound: RPCOutbound<PBHeadMessage>, context: RPCContext) in
            guard ConstantTime.isBearer(context.headers[.authorization], token: token) else {
                logger.warning("refused a worker with a wrong or missing cluster token", metadata: ["peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                throw RPCError(.unauthenticated, "wrong or missing cluster token: start the worker with --token (or SERVE_TOKEN) set to the head's token")
            }
            var messages = inbound.makeAsyncIterator()
            guard let first = try await messages.next(), case .register(let register)? = first.kind else {
                throw RPCError(.failedPrecondition, "the first message on the control stream must be a registration")
            }
            guard !register.nodeID.isEmpty else {
                throw RPCError(.invalidArgument, "the registration has no node id")
            }
            let (commands, outbox) = AsyncStream<PBHeadMessage>.makeStream()
            let (answer, connection) = await controller.registerNode(register, outbox: outbox)
            var reply = PBHeadMessage()
            reply.inReplyTo = first.sequence
            reply.registerAnswer = answer
            try await outbound.send(reply)
            guard answer.accepted else {
                logger.warning(
                    "refused a worker's registration",
                    metadata: ["serve.node": "\(register.nodeID)", "reason": "\(answer.refusalReason)"])
                return
            }
            let nodeID = register.nodeID
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await command in commands { try await outbound.send(command) }
                    }
                    defer { group.cancelAll() }
                    while let message = try await messages.next() {
                        switch message.kind {
                        case .heartbeat(let heartbeat): await controller.heartbeat(heartbeat, from: nodeID)
                        case .replicaState(let report): await controller.replicaReport(report, from: nodeID)
                        case .register, .pong, .ack, .none: break
                        }
                    }
                }
            } catch {
                logger.info("a worker's control stream failed", metadata: ["serve.node": "\(nodeID)", "error": "\(error)"])
            }
            outbox.finish()
            await controller.nodeDisconnected(nodeID, connection: connection)
        }
        return router
    }
}
