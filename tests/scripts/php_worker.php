<?php
// Gearman worker for tests (php-gearman).  Usage: php php_worker.php PORT COUNT FN[:TIMEOUT_MS]...
// Prints one JSON line per job received; exits after COUNT jobs (exit 2 on a 20 s idle timeout).
$port = (int)$argv[1];
$count = (int)$argv[2];
$w = new GearmanWorker();
$w->addServer('127.0.0.1', $port);
$w->setTimeout(20000);
foreach (array_slice($argv, 3) as $spec) {
    $parts = explode(':', $spec);
    $timeout = isset($parts[1]) ? (int)$parts[1] : 0;
    $w->addFunction($parts[0], 'handle_job', null, $timeout);
}

function handle_job($job)
{
    $fn = $job->functionName();
    $data = $job->workload();
    echo json_encode(['fn' => $fn, 'data' => base64_encode($data), 'unique' => $job->unique(),
                      'handle' => $job->handle()]), "\n";
    fflush(STDOUT);
    switch ($fn) {
        case 'php_rev':
            return strrev($data);
        case 'php_chatty':
            $job->sendData("d1");
            $job->sendWarning("w1");
            $job->sendStatus(1, 2);
            return "done";
        case 'php_fail':
            $job->sendFail();
            return null;
        case 'php_exc':
            $job->sendException("boom");
            return null;
        case 'php_slow':
            sleep(30);
            return 'late';
        default:
            return "$fn:$data";
    }
}

for ($done = 0; $done < $count; $done++) {
    if (!$w->work()) {
        fwrite(STDERR, "work() failed: " . $w->returnCode() . " " . $w->error() . "\n");
        exit($w->returnCode() == GEARMAN_TIMEOUT ? 2 : 3);
    }
}
exit(0);
