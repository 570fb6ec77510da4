import NIOCore

/// Settings of one HTTP/2 connection, client or server. The defaults suit a cluster's internal
/// links: large windows for throughput, bounded buffers for memory.
public struct HTTP2Configuration: Sendable, Hashable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to the peer (RFC 9113 §6.5.2). A client that
    /// opens more waits inside nghttp2 until a stream slot frees up.
    public var maxConcurrentStreams: Int = 1024
    /// SETTINGS_INITIAL_WINDOW_SIZE: how much of one stream's body the peer may send before this
    /// side has consumed it. It bounds the memory one unread stream can hold.
    public var initialStreamWindowSize: Int = 1 << 20
    /// The connection-level receive window: the most body bytes, over all streams, buffered here
    /// and not yet consumed by the application.
    public var connectionWindowSize: Int = 16 << 20
    /// The largest header block (names and values, as in SETTINGS_MAX_HEADER_LIST_SIZE) accepted
    /// from the peer. A peer that sends more loses the connection with ENHANCE_YOUR_CALM.
    public var maxHeaderListSize: Int = 64 << 10
    /// How many body bytes a writer may queue on one stream before `write` waits for the peer to
    /// take them (flow control reaching back to the writer).
    public var outboundBufferHighWatermark: Int = 256 << 10
    /// A connection with no open stream for this long is closed gracefully; nil keeps it open.
    public var idleTimeout: TimeAmount? = .seconds(300)
    /// Servers: a request whose header block has not completed this long after it began ends
    /// the connection (an unfinished header block stalls every stream: RFC 9113 §6.10), which
    /// stops slow-header attacks. nil waits forever.
    public var requestHeadTimeout: TimeAmount? = .seconds(10)
    /// Servers: a request body must keep arriving while its handler waits for it. Past this long
    /// with nothing new, the stream alone is answered 408 (or reset, if its response has begun)
    /// and the handler's body read fails with `HTTP2Error.timeout`; the connection and its other
    /// streams go on. Not counted while the handler has bytes it has not read (flow control then
    /// holds the client back, not the client itself). nil: only `request_timeout_s` and the
    /// connection's limits apply. The same limit as `HTTP1Configuration.bodyReadTimeout`.
    public var bodyReadTimeout: TimeAmount? = .seconds(30)
    /// Compression of bodies (gzip or deflate) when the peer accepts it.
    public var compression: Compression = .init()
    /// The largest decompressed body accepted; a compressed body that would decode to more is
    /// refused (a decompression bomb) with `HTTP2Error.badBody`.
    public var maxDecompressedBodySize: Int = 100 << 20

    public struct Compression: Sendable, Hashable {
        /// Whether to compress responses (server) or request bodies (client, only when
        /// `compressRequests` is also set) at all.
        public var enabled: Bool = true
        /// Bodies smaller than this are sent as they are: compressing them costs more than it saves.
        public var minimumSize: Int = 1024
        /// zlib level, 1 (fast) to 9 (small).
        public var level: Int32 = 6
        /// Clients only: compress request bodies too. Only for peers known to decode them
        /// (every ServeWire server does); plain HTTP/2 servers may not.
        public var compressRequests: Bool = false

        /// Between the nodes of a cluster (`benchmarks/compression.py`, README "Compression
        /// between nodes"): zlib pays only on links slower than its own speed (level 1 about
        /// 100-450 Mbit/s of savings per core on JSON here, level 6 about a third of that), so
        /// level 1, and only bodies of 64 KiB or more, where the per-call cost is amortized. A
        /// client on loopback asks for none (`forPeer(host:)`).
        public static let betweenNodes = Compression(enabled: true, minimumSize: 64 << 10, level: 1)

        /// `self`, or nothing for a peer on loopback: the bytes never leave the machine, so
        /// compressing them only costs CPU.
        public func forPeer(host: String) -> Compression {
            var compression = self
            if Self.isLoopback(host) { compression.enabled = false }
            return compression
        }

        static func isLoopback(_ host: String) -> Bool {
            host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
        }

        public init(enabled: Bool = true, minimumSize: Int = 1024, level: Int32 = 6, compressRequests: Bool = false) {
            self.enabled = enabled
            self.minimumSize = minimumSize
            self.level = level
            self.compressRequests = compressRequests
        }
    }

    public init() {}
}
