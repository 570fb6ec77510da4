import ServiceLifecycle

/// What a foreground process says about its own life, as a part of its `ServiceGroup`: `ready`
/// once the group runs (its signals are trapped and its parts started, so a script that reads the
/// line and sends SIGTERM at once gets a graceful shutdown, not a killed process), and `stopping`
/// when the group's graceful shutdown begins. Put it last among the services: the group stops
/// them in reverse, so it speaks before anything stops.
public struct Announcements: Service, CustomStringConvertible {
    public var description: String { "announcements" }
    private let ready: @Sendable () -> Void
    private let stopping: @Sendable () -> Void

    public init(ready: @escaping @Sendable () -> Void = {}, stopping: @escaping @Sendable () -> Void = {}) {
        self.ready = ready
        self.stopping = stopping
    }

    public func run() async {
        self.ready()
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: the process is failing, and says so itself
        }
        self.stopping()
    }
}
