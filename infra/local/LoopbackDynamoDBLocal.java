// Runs DynamoDB Local listening on 127.0.0.1 only. Its own main (and its options) always
// listen on every interface, which would hand the local tables to anyone on the same
// network; it has no option to choose the address. This launcher builds the server with
// DynamoDB Local's documented embedding API (ServerRunner.createServerFromCommandLineArgs,
// which takes the same options), binds its Jetty connectors to 127.0.0.1, then starts it.
//
// services.sh runs it as a single-file program (java ... LoopbackDynamoDBLocal.java ARGS),
// with DynamoDBLocal.jar and DynamoDBLocal_lib/* on the class path: no build step.

import java.lang.reflect.Field;

import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;

import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

public class LoopbackDynamoDBLocal {
    private static final String HOST = "127.0.0.1";

    public static void main(String[] args) throws Exception {
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        // The proxy keeps its Jetty server in a private field; no public accessor exists.
        Field field = DynamoDBProxyServer.class.getDeclaredField("server");
        field.setAccessible(true);
        Server server = (Server) field.get(proxy);
        Connector[] connectors = server.getConnectors();
        if (connectors.length == 0) {
            throw new IllegalStateException("DynamoDB Local built a server without connectors");
        }
        for (Connector connector : connectors) {
            if (!(connector instanceof ServerConnector)) {
                throw new IllegalStateException("unexpected connector " + connector);
            }
            ((ServerConnector) connector).setHost(HOST);
        }
        proxy.start();
        System.out.println("DynamoDB Local listening on " + HOST + " only");
        proxy.join();
    }
}
