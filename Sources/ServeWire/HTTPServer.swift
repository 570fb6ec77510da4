import HTTPTypes
import Logging
import NIOCore
import NIOPosix

/// A server for HTTP/1.1 and cleartext HTTP/2 on one port: what an ingress needs, since plain
/// HTTP clients speak HTTP/1.1 and internal ones HTTP/2 with prior knowledge (RFC 9113 §3.3).
/// Each connection's first bytes decide: the HTTP/2 client preface (RFC 9113 §3.4) starts an
/// HTTP/2 connection, anything else HTTP/1.1. One handler answers both.
public final class HTTPServer: ListeningServer, @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPServerRequest, any HTTPResponseWriter) async throws -> Void

    /// Binds and starts serving. Port 0 picks a free port (read it back from `port`).
    public static func bind(
        host: String,
        port: Int,
        http1: HTTP1Configuration = .init(),
        http2: HTTP2Configuration = .init(),
        listener: ListenerConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "serve.wire.server"),
        handler: @escaping Handler
    ) async throws -> HTTPServer {
        let http1Handler: HTTP1Server.Handler = { request, writer in try await handler(request, writer) }
        let http2Handler: HTTP2Server.Handler = { request, writer in try await handler(request, writer) }
        let channels = try await ServerChannels.bind(host: host, port: port, eventLoopGroup: eventLoopGroup, listener: listener) { channel in
            try channel.pipeline.syncOperations.addHandler(
                HTTPProtocolSniffer(
                    idleTimeout: http1.idleTimeout,
                    http1: { pipeline in
                        try HTTP1ServerConnection.configure(pipeline, configuration: http1, logger: logger, handler: http1Handler)
                    },
                    http2: { pipeline in
                        try pipeline.addHandler(
                            HTTP2Connection(role: .server(http2Handler), configuration: http2, logger: logger))
                    }
                )
            )
        }
        return HTTPServer(channels: channels)
    }

}

/// The first handler of an `HTTPServer` connection: reads until the bytes seen so far either
/// differ from the HTTP/2 client preface or complete it, installs the matching protocol, removes
/// itself and passes the bytes on. An HTTP/1 request differs at its first byte (no method starts
/// with "PRI"), so HTTP/1.1 clients wait for nothing.
final class HTTPProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// RFC 9113 §3.4.
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private let idleTimeout: TimeAmount?
    private let http1: (ChannelPipeline.SynchronousOperations) throws -> Void
    private let http2: (ChannelPipeline.SynchronousOperations) throws -> Void
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var decided = false

    init(
        idleTimeout: TimeAmount?,
        http1: @escaping (ChannelPipeline.SynchronousOperations) throws -> Void,
        http2: @escaping (ChannelPipeline.SynchronousOperations) throws -> Void
    ) {
        self.idleTimeout = idleTimeout
        self.http1 = http1
        self.http2 = http2
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard self.timer == nil, !self.decided else { return }
        if let idleTimeout = self.idleTimeout {
            // A connection that never says which protocol it speaks is idle, whatever it is.
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            self.timer = context.eventLoop.scheduleTask(in: idleTimeout) { loopBound.value.close(promise: nil) }
        }
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        guard !self.decided else {
            context.fireChannelRead(data)
            return
        }
        if self.buffered == nil {
            self.buffered = bytes
        } else {
            self.buffered!.writeBuffer(&bytes)
        }
        let seen = self.buffered!.readableBytesView
        let compared = min(seen.count, Self.preface.count)
        if !seen.prefix(compared).elementsEqual(Self.preface.prefix(compared)) {
            self.decide(http2: false, context: context)
        } else if compared == Self.preface.count {
            self.decide(http2: true, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Still undecided: part of the preface arrived, ask for the rest.
        if !self.decided { context.read() }
        context.fireChannelReadComplete()
    }

    private func decide(http2: Bool, context: ChannelHandlerContext) {
        self.decided = true
        self.timer?.cancel()
        self.timer = nil
        let pipeline = context.pipeline.syncOperations
        do {
            if http2 {
                try self.http2(pipeline)
                // HTTP/2 has its own flow control: it reads whenever it can (as HTTP2Server's
                // connections do).
                try context.channel.syncOptions?.setOption(.maxMessagesPerRead, value: 16)
                try context.channel.syncOptions?.setOption(.autoRead, value: true)
            } else {
                try self.http1(pipeline)
            }
        } catch {
            context.close(promise: nil)
            return
        }
        if let bytes = self.buffered.take() {
            context.fireChannelRead(self.wrapInboundOut(bytes))
        }
        pipeline.removeHandler(context: context, promise: nil)
    }
}
