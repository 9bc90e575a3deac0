#!/usr/bin/perl
# Gearman worker for tests (Gearman::Worker).  Usage: perl perl_worker.pl PORT COUNT FN[:TIMEOUT]...
# Prints one line per job: "<function>\t<handle>\t<hex of the argument>"; exits after COUNT jobs
# or after 20 idle seconds (exit 2).
use strict;
use warnings;
use Gearman::Worker;

$| = 1;
my ($port, $count, @specs) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
my $done = 0;
my $started = time;

my %handlers = (
    perl_rev => sub { my $job = shift; return scalar reverse $job->arg; },
    perl_chatty => sub {
        my $job = shift;
        $worker->send_work_data($job, "d1");
        $worker->send_work_warning($job, "w1");
        $job->set_status(1, 2);
        return "done";
    },
    perl_fail => sub { return undef; },
    perl_exc => sub { die "boom\n"; },
    perl_slow => sub { sleep 30; return "late"; },
);

for my $spec (@specs) {
    my ($fn, $timeout) = split /:/, $spec;
    my $h = $handlers{$fn} || sub { my $job = shift; return "$fn:" . $job->arg; };
    my $cb = sub {
        my $job = shift;
        print join("\t", $fn, $job->handle, unpack("H*", $job->arg)), "\n";
        $done++;
        return $h->($job);
    };
    if (defined $timeout) {
        $worker->register_function($fn, $timeout, $cb);
    } else {
        $worker->register_function($fn, $cb);
    }
}

$worker->work(stop_if => sub {
    my ($idle, $last) = @_;
    return 1 if $done >= $count;
    exit 2 if time - $started > 20 && $idle;
    return 0;
});
exit 0;
