import Logging
import NIOConcurrencyHelpers
import ServeCore
import ServiceLifecycle

/// One of the controller's timers as a part of the head: `body` runs, then again after the pause
/// it returns, until the head shuts down (gracefully or not).
struct Ticker: Service, CustomStringConvertible {
    let description: String
    private let body: @Sendable () async -> Duration

    init(_ description: String, _ body: @escaping @Sendable () async -> Duration) {
        self.description = description
        self.body = body
    }

    func run() async {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let pause = await self.body()
                try? await Task.sleep(for: pause)
            }
        }
    }
}

/// The deployed applications as a part of the head: when the head shuts down gracefully their
/// replicas stop, on every node, each letting its requests finish within
/// `graceful_shutdown_timeout_s`. The config stays in the state dir, so a head started again on
/// it serves the same applications. (Cancelled, the head is failing: nothing is stopped here;
/// each node's replicas go with it, or go on serving without the head.)
struct Applications: Service, CustomStringConvertible {
    let controller: Controller
    let logger: Logger
    var description: String { "applications" }

    func run() async {
        do {
            try await gracefulShutdown()
        } catch {
            return
        }
        self.logger.info("stopping the applications' replicas; their config stays in the state dir")
        await self.controller.deploy(
            ServeConfig(httpOptions: await self.controller.config.httpOptions, applications: []))
    }
}

/// Where a shutdown request (`POST /api/serve/shutdown`, `HeadRuntime.requestShutdown`) finds the
/// head's running `ServiceGroup`, or waits for it to run.
final class ShutdownRequests: Sendable {
    private let state = NIOLockedValueBox<(group: ServiceGroup?, requested: Bool)>((nil, false))

    func request() async {
        let group = self.state.withLockedValue { state in
            state.requested = true
            return state.group
        }
        await group?.triggerGracefulShutdown()
    }

    /// `group` is about to run: a request made before shuts it down at once.
    func attach(_ group: ServiceGroup) async {
        let requested = self.state.withLockedValue { state in
            state.group = group
            return state.requested
        }
        if requested { await group.triggerGracefulShutdown() }
    }
}
