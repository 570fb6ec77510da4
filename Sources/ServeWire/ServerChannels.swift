import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Limits of one listening socket, whatever its connections speak.
public struct ListenerConfiguration: Sendable, Hashable {
    /// Client connections held at once. One past it is closed as soon as it is accepted, so a
    /// flood of idle connections costs bounded memory and descriptors, and the connections
    /// already open keep being served. nil: no limit (the process's descriptor limit applies).
    public var maxConnections: Int? = 4096

    public init(maxConnections: Int? = 4096) {
        self.maxConnections = maxConnections
    }
}

/// A connection refused because the server holds `ListenerConfiguration.maxConnections`.
struct TooManyConnections: Error {}

/// A listening socket and the connections it accepted: what every ServeWire server needs to
/// shut down gracefully, whichever protocols its connections speak.
final class ServerChannels: Sendable {
    let serverChannel: any Channel
    private let connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>

    private init(serverChannel: any Channel, connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>) {
        self.serverChannel = serverChannel
        self.connections = connections
    }

    /// Binds a listener. With `autoRead` off (the default), a connection's first handler decides
    /// when to read (the HTTP/1 connection reads only while its handler keeps up); HTTP/2 reads
    /// freely, since its flow control bounds what a peer may send.
    static func bind(
        host: String,
        port: Int,
        eventLoopGroup: any EventLoopGroup,
        listener: ListenerConfiguration,
        autoRead: Bool = false,
        initialize: @escaping @Sendable (any Channel) throws -> Void
    ) async throws -> ServerChannels {
        let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: autoRead)
            .childChannelInitializer { channel in
                let key = ObjectIdentifier(channel)
                let admitted = connections.withLockedValue { open in
                    if let limit = listener.maxConnections, open.count >= limit { return false }
                    open[key] = channel
                    return true
                }
                // The accepting side closes a connection whose initializer fails.
                guard admitted else { return channel.eventLoop.makeFailedFuture(TooManyConnections()) }
                channel.closeFuture.whenComplete { _ in
                    _ = connections.withLockedValue { $0.removeValue(forKey: key) }
                }
                return channel.eventLoop.makeCompletedFuture { try initialize(channel) }
            }
            .bind(host: host, port: port)
            .get()
        return ServerChannels(serverChannel: channel, connections: connections)
    }

    var connectionCount: Int { self.connections.withLockedValue { $0.count } }

    /// Stops accepting; each connection finishes what it has started and closes (HTTP/2: GOAWAY,
    /// RFC 9113 §6.8; HTTP/1.1: idle connections close now, busy ones after their response,
    /// RFC 9112 §9.6); past `gracePeriod` whatever is left closes.
    func shutdown(gracePeriod: TimeAmount) async {
        try? await self.serverChannel.close()
        let channels = self.connections.withLockedValue { Array($0.values) }
        for channel in channels {
            channel.eventLoop.execute {
                let pipeline = channel.pipeline.syncOperations
                if let connection = try? pipeline.handler(type: HTTP2Connection.self) {
                    connection.closeGracefully()
                } else if let connection = try? pipeline.handler(type: HTTP1ServerConnection.self) {
                    connection.closeGracefully()
                } else {
                    // Still deciding which protocol it speaks: no request has started.
                    channel.close(promise: nil)
                }
            }
        }
        let deadline = NIODeadline.now() + gracePeriod
        for channel in channels {
            let force = channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
            try? await channel.closeFuture.get()
            force.cancel()
        }
    }

    /// Closes the listener and every connection at once.
    func close() async {
        try? await self.serverChannel.close()
        let channels = self.connections.withLockedValue { Array($0.values) }
        for channel in channels { try? await channel.close() }
    }
}

/// What every ServeWire server offers once bound: its address, a graceful shutdown, a hard close.
/// (HTTP2Server, HTTP1Server and HTTPServer differ only in what they put on each connection.)
public class ListeningServer: @unchecked Sendable {  // immutable: one `let` of a Sendable type
    let channels: ServerChannels

    init(channels: ServerChannels) {
        self.channels = channels
    }

    /// The address the server listens on (with the real port when bound to port 0).
    public var localAddress: SocketAddress { self.channels.serverChannel.localAddress! }
    public var port: Int { self.localAddress.port! }

    /// Stops accepting; each connection finishes what it has started and closes (HTTP/2: GOAWAY,
    /// then open streams finish; HTTP/1.1: idle connections close now, busy ones after their
    /// response, which says `Connection: close`); past `gracePeriod` whatever is left closes.
    public func shutdown(gracePeriod: TimeAmount = .seconds(10)) async {
        await self.channels.shutdown(gracePeriod: gracePeriod)
    }

    /// Closes the listener and every connection at once.
    public func close() async {
        await self.channels.close()
    }

    /// Number of open client connections.
    public var connectionCount: Int { self.channels.connectionCount }
}

/// A server that could not start listening, and the part of the program that wanted it: what a
/// process stops with when one of its ports is taken ("the admin API (--admin-port) cannot
/// listen on 127.0.0.1:8265: Address already in use").
public struct ListenError: Error, CustomStringConvertible {
    /// The part, and the flag that moves it.
    public var part: String
    public var host: String
    public var port: Int
    public var reason: String

    public var description: String { "\(self.part) cannot listen on \(self.host):\(self.port): \(self.reason)" }

    /// Runs `bind`, naming `part` in its error.
    public static func naming<Server>(
        _ part: String, host: String, port: Int, _ bind: () async throws -> Server
    ) async throws -> Server {
        do {
            return try await bind()
        } catch let error as IOError {
            let reason = "\(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))"
            throw ListenError(part: part, host: host, port: port, reason: reason)
        } catch {
            throw ListenError(part: part, host: host, port: port, reason: "\(error)")
        }
    }
}
