import ArgumentParser
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOPosix
import ServeWire
import ServiceLifecycle

/// `serve-wire-echo`: the ServeWire HTTP/2 server answering every request with its own body
/// (or, for a request without one, its path). Used by the interop tests and `benchmarks/wire`.
/// SIGTERM or SIGINT: it stops accepting, lets the requests in flight finish, and exits 0.
@main
struct ServeWireEcho: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve-wire-echo",
        abstract: "An HTTP/2 (h2c, prior knowledge) echo server on ServeWire."
    )

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port, printed on start).")
    var port = 8080

    @Option(help: "Event loop threads (default: one per core).")
    var threads: Int = System.coreCount

    func run() async throws {
        let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: self.threads)
        let server = try await HTTP2Server.bind(host: self.host, port: self.port, eventLoopGroup: eventLoops) { request, writer in
            var fields = HTTPFields()
            fields[.contentType] = request.head.headerFields[.contentType] ?? "application/octet-stream"
            if request.head.method == .get || request.head.method == .head {
                try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: ByteBuffer(string: request.head.path ?? "/"))
                return
            }
            try await writer.writeHead(HTTPResponse(status: .ok, headerFields: fields))
            for try await chunk in request.body {
                try await writer.write(chunk)
            }
            try await writer.finish(trailers: request.body.trailers)
        }
        // Written unbuffered: scripts and tests wait for this line to know the port.
        let listening = "serve-wire-echo listening on \(self.host):\(server.port)\n"
        let services = ServiceGroup(
            services: [
                ServerService("echo server", server, gracePeriod: .seconds(5)),
                Announcements(ready: { FileHandle.standardOutput.write(Data(listening.utf8)) }),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: Logger(label: "serve-wire-echo")
        )
        try await services.run()
        try await eventLoops.shutdownGracefully()
    }
}
