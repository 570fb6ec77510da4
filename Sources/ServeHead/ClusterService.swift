import Logging
import NIOConcurrencyHelpers
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
            // Bounded: a worker that stops reading is dropped when its commands pile up past the
            // limit (`Controller.send`), and registers again to get the current state whole.
            let (commands, outbox) = AsyncStream<RPCFrame<PBHeadMessage>>.makeStream(bufferingPolicy: .bufferingOldest(Controller.outboxLimit))
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
            // The worker's messages are read on a task of their own: a read cannot be
            // cancelled, and this stream must end as soon as the controller drops the node (it
            // finishes the outbox when the node is declared DEAD or registers again), even when
            // a partition means nothing more will ever arrive to read.
            let rest = IteratorBox(messages)
            let workerLeft = NIOLockedValueBox(false)
            let quietHeartbeats = controller.quietHeartbeats
            Task {
                // Heartbeats that change nothing go to the controller once in a while only.
                var quiet = quietHeartbeats
                do {
                    while let message = try await rest.iterator.next() {
                        switch message.kind {
                        case .heartbeat(let heartbeat):
                            let arrived = ContinuousClock.now
                            let changes = !heartbeat.replicas.isEmpty || heartbeat.hasProxy || heartbeat.health.status == .draining
                            guard quiet.pass(changes: changes, waiting: heartbeat.waiting.contains { $0.waiting > 0 }, now: MonotonicTime.seconds(arrived))
                            else { continue }
                            await controller.heartbeat(heartbeat, from: nodeID, connection: connection)
                            controller.metrics.heartbeatHandled(seconds: (ContinuousClock.now - arrived).seconds)
                        case .replicaState(let report):
                            await controller.replicaReport(report, from: nodeID, connection: connection)
                        case .ack:
                            await controller.heard(from: nodeID, connection: connection)
                        case .register, .none:
                            continue
                        }
                    }
                } catch {
                    logger.info("a worker's control stream failed", metadata: ["serve.node": "\(nodeID)", "error": "\(error)"])
                }
                workerLeft.withLockedValue { $0 = true }
                outbox.finish()
                await controller.nodeDisconnected(nodeID, connection: connection)
            }
            do {
                for await command in commands { try await outbound.send(command) }
            } catch {
                logger.info("a worker's control stream failed", metadata: ["serve.node": "\(nodeID)", "error": "\(error)"])
            }
            await controller.nodeDisconnected(nodeID, connection: connection)
            if !workerLeft.withLockedValue({ $0 }) {
                // The controller dropped the node: tell the worker why (it registers again).
                throw RPCError(.unavailable, "the head declared this node dead or took a newer control stream for it; register again")
            }
        }
        return router
    }
}

/// Hands the control stream's message iterator to the task that reads it (only that task
/// touches it from then on).
private final class IteratorBox: @unchecked Sendable {
    var iterator: RPCInbound<PBWorkerMessage>.AsyncIterator
    init(_ iterator: RPCInbound<PBWorkerMessage>.AsyncIterator) { self.iterator = iterator }
}
