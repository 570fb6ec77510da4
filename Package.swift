// swift-tools-version: 6.0
import PackageDescription

/// The project's own targets: `any` spelled out, and in CI (`SERVE_WARNINGS_AS_ERRORS=1`, set by
/// `.ci/run`) every warning is an error. Dependencies are not affected.
let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]
    + (Context.environment["SERVE_WARNINGS_AS_ERRORS"] == "1" ? [.unsafeFlags(["-warnings-as-errors"])] : [])

let package = Package(
    name: "swift-serve",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "serve-head", targets: ["serve-head"]),
        .executable(name: "serve-worker", targets: ["serve-worker"]),
        .executable(name: "serve", targets: ["serve"]),
        .executable(name: "serve-wire-echo", targets: ["serve-wire-echo"]),
        .executable(name: "serve-plot", targets: ["serve-plot"]),
        .executable(name: "serve-control-sim", targets: ["serve-control-sim"]),
        .library(name: "Serve", targets: ["Serve"]),
        .library(name: "ServeWorker", targets: ["ServeWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CNghttp2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        .systemLibrary(
            name: "CZlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .target(
            name: "ServeWire",
            dependencies: [
                "CNghttp2", "CZlib",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "ServeProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["README.md"],
            swiftSettings: strict
        ),
        .target(
            name: "ServeCore",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: strict
        ),
        /// Charts as SVG (presentation, not decisions): `serve simulate --plot` and `serve-plot`,
        /// which draws the benchmarks' plots from JSON.
        .target(name: "ServePlot", swiftSettings: strict),
        .target(
            name: "Serve",
            dependencies: [
                "ServeCore", "ServeWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "ServeProxy",
            dependencies: ["ServeCore", "ServeWire", "ServeProto", .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "ServeHead",
            dependencies: [
                "ServeCore", "ServeWire", "ServeProto", "ServeProxy", "Serve",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        /// Forks a replica's child with every descriptor close-on-exec and a parent-death signal
        /// (what posix_spawn cannot do).
        .target(name: "CServeSpawn"),
        .target(
            name: "ServeWorker",
            dependencies: [
                "ServeCore", "ServeWire", "ServeProto", "Serve", "ServeProxy", "CServeSpawn",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "ServeEmbedded",
            dependencies: [
                "ServeHead", "ServeWorker", "ServeCore",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "serve-head",
            dependencies: [
                "ServeEmbedded", "ServeHead", "ServeWorker", "ServeCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "serve-worker",
            dependencies: [
                "ServeWorker", "ServeCore", "Serve",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "serve",
            dependencies: [
                "ServeEmbedded", "ServeHead", "ServeCore", "ServeWire", "ServeWorker", "ServePlot",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "serve-plot",
            dependencies: ["ServePlot", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "serve-wire-echo",
            dependencies: [
                "ServeWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        /// Simulated worker nodes against a real head: the control plane at scale
        /// (benchmarks/control_plane.py).
        .executableTarget(
            name: "serve-control-sim",
            dependencies: [
                "ServeWire", "ServeProto", "ServeProxy", "ServeCore", "ServeWorker",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "benchmarks/control-plane/sim",
            swiftSettings: strict
        ),
        .testTarget(
            name: "ServeWireTests",
            dependencies: [
                "ServeWire", "ServeProto",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "ServeCoreTests", dependencies: ["ServeCore"], swiftSettings: strict),
        .testTarget(name: "ServePlotTests", dependencies: ["ServePlot"], swiftSettings: strict),
        .testTarget(
            name: "ServeProxyTests",
            dependencies: [
                "ServeProxy", "ServeCore", "ServeWire", "ServeProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "ServeWire", "ServeCore", "Serve", "ServeHead", "ServeEmbedded", "ServeWorker",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ServeProtoTests",
            dependencies: ["ServeProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: strict
        ),
    ]
)
