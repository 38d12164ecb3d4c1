package org.fedcohort.opensearch;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * Starts one real OpenSearch node (the server code of the distribution, from Maven Central jars) with the
 * netty4 HTTP/transport plugin and analysis-common loaded from the classpath, bound to loopback.
 *
 * <p>Settings come as {@code -Ekey=value} arguments, as for the distribution's {@code opensearch} script;
 * {@code path.home} is required and holds {@code config/} (a log4j2.properties is written there when
 * missing), {@code data/} and {@code logs/} unless {@code path.data}/{@code path.logs} say otherwise. The node runs
 * until the process gets SIGTERM/SIGINT (closed cleanly) or SIGKILL. It prints one line starting with
 * {@code FEDCOHORT-NODE-STARTED} once HTTP is up.
 */
public final class NodeLauncher {

    /** A node whose plugins come from the classpath (the constructor the test framework's MockNode uses). */
    static final class ClasspathPluginNode extends Node {
        ClasspathPluginNode(Environment environment) {
            super(environment, List.of(Netty4Plugin.class, CommonAnalysisPlugin.class), true);
        }
    }

    private static final String LOG4J = String.join("\n",
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
        "rootLogger.level = ${sys:fedcohort.log.level:-info}",
        "rootLogger.appenderRef.console.ref = console",
        "");

    private NodeLauncher() {
    }

    public static void main(String[] args) throws Exception {
        Settings.Builder builder = Settings.builder()
            .put("network.host", "127.0.0.1")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", false);
        for (String arg : args) {
            if (!arg.startsWith("-E") || !arg.contains("=")) {
                System.err.println("usage: NodeLauncher -Epath.home=DIR [-Ekey=value ...]; unexpected argument: " + arg);
                System.exit(2);
            }
            int eq = arg.indexOf('=');
            builder.put(arg.substring(2, eq), arg.substring(eq + 1));
        }
        String home = builder.get("path.home");
        if (home == null) {
            System.err.println("NodeLauncher: -Epath.home=DIR is required");
            System.exit(2);
        }
        Path config = Paths.get(home).toAbsolutePath().resolve("config");
        Files.createDirectories(config);
        Path log4j = config.resolve("log4j2.properties");
        if (!Files.exists(log4j)) {
            Files.writeString(log4j, LOG4J, StandardCharsets.UTF_8);
        }
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            builder.build(), Map.of(), config, () -> "fedcohort-node");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(environment.settings()));
        LogConfigurator.configure(environment);

        Node node = new ClasspathPluginNode(environment);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (IOException | InterruptedException e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "fedcohort-node-shutdown"));
        node.start();
        System.out.println("FEDCOHORT-NODE-STARTED name=" + Node.NODE_NAME_SETTING.get(environment.settings())
            + " http=" + environment.settings().get("http.port", "9200"));
        System.out.flush();
        stopped.await();
    }
}
