import Logging
import NIOCore
import ServiceLifecycle

/// A bound ServeWire server as a long-lived part of a process (swift-service-lifecycle's
/// `Service`): it serves until its `ServiceGroup` shuts down gracefully, then stops accepting and
/// lets each connection finish what it started, for up to `gracePeriod`; cancelled (the group
/// is going down because another part failed), it closes everything at once.
///
/// The server is bound before the group runs, so a port that is taken fails the process's start
/// with the bind error, before anything else runs.
public struct ServerService: Service, CustomStringConvertible {
    /// What the server is, for logs and the group's service list ("HTTP ingress", "admin API").
    public let description: String
    private let server: ListeningServer
    private let gracePeriod: TimeAmount
    private let logger: Logger?
    private let willStop: @Sendable () -> Void

    /// `logger`: where it says it has closed. `willStop`: runs when the graceful shutdown begins,
    /// before the listener closes (say what is happening).
    public init(
        _ description: String,
        _ server: ListeningServer,
        gracePeriod: TimeAmount,
        logger: Logger? = nil,
        willStop: @escaping @Sendable () -> Void = {}
    ) {
        self.description = description
        self.server = server
        self.gracePeriod = gracePeriod
        self.logger = logger
        self.willStop = willStop
    }

    public func run() async {
        do {
            try await gracefulShutdown()
        } catch {
            // Cancelled: the group is failing or was told to stop now.
            await self.server.close()
            return
        }
        self.willStop()
        await self.server.shutdown(gracePeriod: self.gracePeriod)
        self.logger?.info("\(self.description) closed")
    }
}
