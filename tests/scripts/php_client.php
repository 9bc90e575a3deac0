<?php
// Gearman client for tests (php-gearman).  Prints one JSON object.  Usage:
//   php php_client.php PORT do   normal|high|low FN DATA [UNIQUE]
//   php php_client.php PORT bg   normal|high|low FN DATA [UNIQUE]
//   php php_client.php PORT tasks FN DATA [exceptions]
//   php php_client.php PORT status HANDLE
//   php php_client.php PORT status_unique UNIQUE
$port = (int)$argv[1];
$mode = $argv[2];
$c = new GearmanClient();
$c->addServer('127.0.0.1', $port);
$c->setTimeout(20000);
$out = [];
switch ($mode) {
    case 'do':
        list(, , , $prio, $fn, $data) = $argv;
        $unique = isset($argv[6]) ? $argv[6] : null;
        $m = ['normal' => 'doNormal', 'high' => 'doHigh', 'low' => 'doLow'][$prio];
        $res = $c->$m($fn, $data, $unique);
        $out = ['result' => $res, 'rc' => $c->returnCode()];
        break;
    case 'bg':
        list(, , , $prio, $fn, $data) = $argv;
        $unique = isset($argv[6]) ? $argv[6] : null;
        $m = ['normal' => 'doBackground', 'high' => 'doHighBackground',
              'low' => 'doLowBackground'][$prio];
        $out = ['handle' => $c->$m($fn, $data, $unique), 'rc' => $c->returnCode()];
        break;
    case 'tasks':
        $events = [];
        $c->setDataCallback(function ($t) use (&$events) { $events[] = ['data', $t->data()]; });
        $c->setWarningCallback(function ($t) use (&$events) { $events[] = ['warning', $t->data()]; });
        $c->setStatusCallback(function ($t) use (&$events) {
            $events[] = ['status', $t->taskNumerator(), $t->taskDenominator()]; });
        $c->setCompleteCallback(function ($t) use (&$events) { $events[] = ['complete', $t->data()]; });
        $c->setFailCallback(function ($t) use (&$events) { $events[] = ['fail']; });
        if (isset($argv[5]) && $argv[5] === 'exceptions') {
            $c->setExceptionCallback(function ($t) use (&$events) {
                $events[] = ['exception', $t->data()]; });
        }
        $c->addTask($argv[3], $argv[4]);
        $ok = $c->runTasks();
        $out = ['events' => $events, 'ok' => $ok, 'rc' => $c->returnCode()];
        break;
    case 'status':
        $out = ['status' => $c->jobStatus($argv[3])];
        break;
    case 'status_unique':
        $out = ['status' => $c->jobStatusByUniqueKey($argv[3])];
        break;
    default:
        fwrite(STDERR, "unknown mode $mode\n");
        exit(2);
}
echo json_encode($out), "\n";
